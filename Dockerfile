# Multi-stage build of every CAAS binary: auth-api, ext-authz, chat, socket
# and caas (envoy-config, migrate, healthcheck). One image; each compose or
# Kubernetes service picks its command.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p caas-auth-api -p caas-ext-authz -p caas-chat -p caas-socket -p caas \
 && mkdir /out \
 && cp target/release/auth-api target/release/ext-authz target/release/chat target/release/socket target/release/caas /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /nonexistent caas
COPY --from=build /out/ /usr/local/bin/
USER 10001
# Listen on every interface inside the container; the defaults are loopback.
ENV AUTH_API_ADDR=0.0.0.0:3007 CHAT_ADDR=0.0.0.0:3008 SOCKET_ADDR=0.0.0.0:3009 \
    EXT_AUTHZ_ADDR=0.0.0.0:9191 EXT_AUTHZ_OPS_ADDR=0.0.0.0:9192
CMD ["caas", "--help"]
