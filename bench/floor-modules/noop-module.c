/*
 * An Envoy dynamic module (envoy.filters.http.dynamic_modules, a native
 * shared library Envoy loads) whose HTTP filter does nothing: what Envoy
 * charges for running a native module, beside what it charges for a
 * proxy-wasm one (bench/module-floor.sh). Built only by that script.
 *
 * Envoy resolves every event hook below when it loads the module; each
 * ignores its arguments (the C calling convention lets a function take
 * fewer than it is given), the config and the filter are one static
 * object, and every status returned is 0: Continue. The ABI version
 * string only decides whether Envoy logs a warning.
 */
static char object[16];

const char *envoy_dynamic_module_on_program_init(void) { return "v0.1.0"; }

void *envoy_dynamic_module_on_http_filter_config_new(void) { return object; }
void *envoy_dynamic_module_on_http_filter_per_route_config_new(void) { return object; }
void *envoy_dynamic_module_on_http_filter_new(void) { return object; }

int envoy_dynamic_module_on_http_filter_request_headers(void) { return 0; }
int envoy_dynamic_module_on_http_filter_request_body(void) { return 0; }
int envoy_dynamic_module_on_http_filter_request_trailers(void) { return 0; }
int envoy_dynamic_module_on_http_filter_response_headers(void) { return 0; }
int envoy_dynamic_module_on_http_filter_response_body(void) { return 0; }
int envoy_dynamic_module_on_http_filter_response_trailers(void) { return 0; }
int envoy_dynamic_module_on_http_filter_local_reply(void) { return 0; }

void envoy_dynamic_module_on_http_filter_config_destroy(void) {}
void envoy_dynamic_module_on_http_filter_per_route_config_destroy(void) {}
void envoy_dynamic_module_on_http_filter_destroy(void) {}
void envoy_dynamic_module_on_http_filter_stream_complete(void) {}
void envoy_dynamic_module_on_http_filter_scheduled(void) {}
void envoy_dynamic_module_on_http_filter_config_scheduled(void) {}
void envoy_dynamic_module_on_http_filter_http_callout_done(void) {}
void envoy_dynamic_module_on_http_filter_config_http_callout_done(void) {}
void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(void) {}
void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(void) {}
void envoy_dynamic_module_on_http_filter_http_stream_headers(void) {}
void envoy_dynamic_module_on_http_filter_http_stream_data(void) {}
void envoy_dynamic_module_on_http_filter_http_stream_trailers(void) {}
void envoy_dynamic_module_on_http_filter_http_stream_complete(void) {}
void envoy_dynamic_module_on_http_filter_http_stream_reset(void) {}
void envoy_dynamic_module_on_http_filter_config_http_stream_headers(void) {}
void envoy_dynamic_module_on_http_filter_config_http_stream_data(void) {}
void envoy_dynamic_module_on_http_filter_config_http_stream_trailers(void) {}
void envoy_dynamic_module_on_http_filter_config_http_stream_complete(void) {}
void envoy_dynamic_module_on_http_filter_config_http_stream_reset(void) {}
