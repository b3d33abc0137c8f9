# Multi-stage build of every CAAS binary: auth-api, ext-authz, chat, socket
# and caas (envoy-config, migrate, healthcheck). One image; each compose or
# Kubernetes service picks its command.
#
# Base images are pinned to exact versions (not floating tags). Pin them by
# digest in your registry mirror as well: `docker buildx imagetools inspect
# rust:1.95.0-bookworm` prints it; write `FROM rust:1.95.0-bookworm@sha256:…`.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src

# 1. Dependencies, in a layer of their own: only the manifests and the lock
#    file, with empty sources, so that editing the code does not rebuild
#    every crate of crates.io (only a Cargo.toml or Cargo.lock change does).
COPY Cargo.toml Cargo.lock ./
COPY rules/Cargo.toml rules/
COPY runtime/Cargo.toml runtime/
COPY core/Cargo.toml core/
COPY http/Cargo.toml http/
COPY auth-api/Cargo.toml auth-api/
COPY ext-authz/Cargo.toml ext-authz/
COPY chat/Cargo.toml chat/
COPY socket/Cargo.toml socket/
COPY cli/Cargo.toml cli/
COPY tests/Cargo.toml tests/
COPY bench/Cargo.toml bench/
RUN for crate in rules runtime core http auth-api ext-authz chat socket cli bench; do \
      mkdir -p "$crate/src" && : > "$crate/src/lib.rs" && echo 'fn main() {}' > "$crate/src/main.rs"; \
    done \
 && mkdir -p tests/e2e && echo 'fn main() {}' > tests/e2e/main.rs \
 && cargo build --release --locked -p caas-auth-api -p caas-ext-authz -p caas-chat -p caas-socket -p caas

# 2. The sources. COPY keeps the files' own times, which may be older than
#    the stubs just built: touch them so cargo rebuilds our crates.
COPY . .
RUN find rules runtime core http auth-api ext-authz chat socket cli -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p caas-auth-api -p caas-ext-authz -p caas-chat -p caas-socket -p caas \
 && mkdir -p /out /symbols \
 && for bin in auth-api ext-authz chat socket caas; do \
      objcopy --only-keep-debug "target/release/$bin" "/symbols/$bin.debug" \
      && objcopy --strip-all --add-gnu-debuglink="/symbols/$bin.debug" "target/release/$bin" "/out/$bin"; \
    done

# Line tables for symbolised backtraces and profiles, kept out of the image:
#   docker build --target symbols --output type=local,dest=./symbols .
FROM scratch AS symbols
COPY --from=build /symbols/ /

FROM debian:12.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /nonexistent caas
COPY --from=build /out/ /usr/local/bin/
USER 10001
# Listen on every interface inside the container; the defaults are loopback.
ENV AUTH_API_ADDR=0.0.0.0:3007 CHAT_ADDR=0.0.0.0:3008 SOCKET_ADDR=0.0.0.0:3009 \
    EXT_AUTHZ_ADDR=0.0.0.0:9191 EXT_AUTHZ_OPS_ADDR=0.0.0.0:9192
CMD ["caas", "--help"]
