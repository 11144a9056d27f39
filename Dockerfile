# kvd's container image: the static kvd and kvctl binaries and nothing else.
# Nothing is pulled: `make image` builds the binaries with CGO_ENABLED=0 into
# bin/image/ (the build context, with an empty data/ directory) and runs
#
#   docker build -f Dockerfile -t kvd:dev bin/image
#
# Run as a node (see deploy/compose.yaml for a three-node cluster):
#
#   docker run -d -v kvd-n1:/var/lib/kvd -p 127.0.0.1:2379:2379 kvd:dev \
#       --name n1 --data-dir /var/lib/kvd --client-addr 0.0.0.0:2379 \
#       --advertise-client-addr 127.0.0.1:2379 --cert-file ... (TLS flags)
#
# (kvd refuses plaintext beyond loopback unless --insecure.)
FROM scratch

COPY kvd kvctl /

# The data dir is a volume owned by the user kvd runs as. A new named volume
# takes its owner and mode from this directory.
COPY --chown=10001:10001 data/ /var/lib/kvd/
VOLUME ["/var/lib/kvd"]
# Certificates (deploy/compose.yaml makes them here with kvd cert cluster).
COPY --chown=10001:10001 data/ /certs/

# No user database in scratch: a numeric uid and gid, not root.
USER 10001:10001

# Client (gRPC) and peer (Raft) ports.
EXPOSE 2379 2380

# There is no shell: kvd checks itself. Healthy means the node serves gRPC and
# knows a leader (kvd health --help).
HEALTHCHECK --interval=5s --timeout=4s --start-period=30s --retries=3 \
    CMD ["/kvd", "health", "--endpoint", "127.0.0.1:2379", "--timeout", "3s"]

ENTRYPOINT ["/kvd"]
