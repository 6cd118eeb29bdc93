# Build: docker build -t herald .
# Run:   docker run -p 8000:8000 -e HERALD_HTTP_LISTEN=0.0.0.0:8000 -v herald-data:/data herald
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin herald

FROM debian:bookworm-slim
RUN useradd --system --home /data herald && mkdir -p /data && chown herald /data
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER herald
WORKDIR /data
ENV HERALD_STORAGE_PATH=/data/herald-data
EXPOSE 8000
ENTRYPOINT ["herald"]
CMD ["serve"]
