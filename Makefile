# Thin wrappers; plain `go build ./... && go test ./...` works too.
GO ?= go

.PHONY: build test test-short lint fmt-check proto proto-check ci e2e image docker-test jepsen jepsen-long jepsen-self-test bench clean

build:
	$(GO) build ./...
	$(GO) build -o bin/kvd ./cmd/kvd
	$(GO) build -o bin/kvctl ./cmd/kvctl

# The README's test command.
test:
	$(GO) test -race ./...

test-short:
	$(GO) test -short ./...

lint: fmt-check
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# Regenerate proto/kvpb (needs protoc: apt-get install protobuf-compiler).
proto:
	./proto/gen.sh

# Fails when the committed generated code is stale.
proto-check: proto
	git diff --exit-code -- proto/kvpb

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
	$(GO) run ./test/jepsen-lite

jepsen-long:
	$(GO) run ./test/jepsen-lite --nodes 5 --duration 30m --seed 42 --rate 300 --out results/

jepsen-self-test:
	$(GO) run ./test/jepsen-lite --self-test

# Micro-benchmarks of the apply, api and report paths (no disk). A running
# cluster is measured with `kvctl bench` (README, Performance).
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./fsm ./api ./cmd/kvctl

clean:
	rm -rf bin
