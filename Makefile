# Thin wrappers; plain `go build ./... && go test ./...` works too (for the
# fault harness, from test/jepsen-lite: it is a module of its own, so that a
# program using kvd's client does not download the harness's dependencies).
GO ?= go
JEPSEN := test/jepsen-lite
# The same limit for `make test` as for CI (which runs it).
TEST_TIMEOUT := 20m
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: build test test-short lint vet staticcheck fmt-check proto proto-check ci e2e image docker-test jepsen jepsen-long jepsen-self-test bench clean

build:
	$(GO) build ./...
	$(GO) build -o bin/kvd ./cmd/kvd
	$(GO) build -o bin/kvctl ./cmd/kvctl

# The README's test command: every package of both modules, as CI runs it.
test:
	$(GO) test -race -timeout $(TEST_TIMEOUT) ./...
	cd $(JEPSEN) && $(GO) test -race -timeout $(TEST_TIMEOUT) ./...

# Skips the tests that start real kvd processes.
test-short:
	$(GO) test -short ./...
	cd $(JEPSEN) && $(GO) test -short ./...

lint: fmt-check vet staticcheck

vet:
	$(GO) vet ./...
	cd $(JEPSEN) && $(GO) vet ./...

# The first run downloads and builds staticcheck (about a minute).
staticcheck:
	$(GO) run $(STATICCHECK) ./...
	cd $(JEPSEN) && $(GO) run $(STATICCHECK) ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# Regenerate proto/kvpb (needs protoc 3.21.12: apt-get install protobuf-compiler
# on Debian bookworm; proto/gen.sh refuses another version).
proto:
	./proto/gen.sh

# Fails when the committed generated code is stale.
proto-check: proto
	git diff --exit-code -- proto/kvpb

# What .ci/run runs once protoc and gcc are installed.
ci: lint proto-check test

# The tests that start real kvd processes.
e2e:
	$(GO) test -race -count=1 ./test/e2e/

# The container image (Dockerfile): static binaries built here, then
# `docker build` FROM scratch around them, so nothing is pulled.
# IMAGE names the tag, IMAGE_CONTEXT the build context it is assembled in.
IMAGE ?= kvd:dev
IMAGE_CONTEXT ?= bin/image

image:
	rm -rf $(IMAGE_CONTEXT)
	mkdir -m 700 -p $(IMAGE_CONTEXT)/data
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(IMAGE_CONTEXT)/kvd ./cmd/kvd
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(IMAGE_CONTEXT)/kvctl ./cmd/kvctl
	docker build -f Dockerfile -t $(IMAGE) $(IMAGE_CONTEXT)

# The compose cluster under partitions, kills and a rolling restart
# (builds its own image; skips without Docker).
docker-test:
	$(GO) test -race -count=1 -v ./test/docker/

# The fault harness (test/jepsen-lite/README.md): the smoke run, a long run,
# and the self-test that plants known bugs and expects each to be caught.
jepsen:
	cd $(JEPSEN) && $(GO) run . --tls

jepsen-long:
	cd $(JEPSEN) && $(GO) run . --tls --nodes 5 --duration 30m --seed 42 --rate 300 --out $(CURDIR)/results/

jepsen-self-test:
	cd $(JEPSEN) && $(GO) run . --self-test

# Micro-benchmarks of the apply, watch hub, api, client (Pipeline), codec and report paths (no disk). A running
# cluster is measured with `kvctl bench` (docs/performance.md).
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./fsm ./node ./api ./client ./proto/kvpb ./cmd/kvctl

clean:
	rm -rf bin
