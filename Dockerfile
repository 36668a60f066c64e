# syntax=docker/dockerfile:1
#
# docker build --build-arg VERSION=$(git describe --tags --always) \
#   --build-arg REVISION=$(git rev-parse HEAD) -t qlik-token-broker .
#
# The runtime image holds the static binary only: no shell, no package
# manager, uid 65532. The HEALTHCHECK is for Docker and Compose; Kubernetes
# uses the chart's HTTP probes instead.
#
# ENTRYPOINT is the binary and CMD its default subcommand, serve:
#   docker run IMAGE                runs /qlik-token-broker serve
#   docker run IMAGE version        runs /qlik-token-broker version (or
#                                   healthcheck, clients, provision, ...)
# Kubernetes' args replace CMD, so the chart sets args: ["serve"] and
# leaves command (which would replace ENTRYPOINT) unset.
# helm/compose_test.go composes them as Kubernetes and Docker do.

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
# Modules first: this layer survives source changes.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download && go mod verify
COPY . .
ARG TARGETOS TARGETARCH
ARG VERSION=dev
ARG REVISION=unknown
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.revision=${REVISION}" \
      -o /out/qlik-token-broker .

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="qlik-token-broker" \
      org.opencontainers.image.description="Hands out cached Qlik Cloud user-impersonation tokens to an OEM web app" \
      org.opencontainers.image.source="https://github.com/qtb-dev/qlik-token-broker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/qlik-token-broker /qlik-token-broker
USER 65532:65532
EXPOSE 8080 9090
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/qlik-token-broker", "healthcheck"]
ENTRYPOINT ["/qlik-token-broker"]
CMD ["serve"]
