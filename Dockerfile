# The brindle image that manifests/brindle.yaml runs: brindle-node, the CNI plugins (copied
# onto each node by the install-cni init container), brindlectl, brindle-controllers, and the
# tools the agent drives (iptables, ipset, iproute2, ethtool, wg, BIRD 2 for the BIRD backend).
#
#   docker build -t ghcr.io/brindle-net/brindle:v0.1.0 .

FROM rust:1.89-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p brindle-agent -p brindle-cni -p brindlectl -p brindle-controllers

FROM debian:bookworm-slim
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends iptables ipset iproute2 ethtool wireguard-tools kmod bird2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/brindle-node /src/target/release/brindle /src/target/release/brindle-ipam \
     /src/target/release/brindlectl /src/target/release/brindle-controllers /usr/local/bin/
COPY manifests/install-cni.sh /opt/brindle/install-cni.sh
ENTRYPOINT ["/usr/local/bin/brindle-node"]
