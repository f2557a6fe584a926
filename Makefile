# stead — build, test, demo and deploy.
# `make test` is what CI runs (.ci/run); `make demo` runs the main job.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
KUBECTL ?= $(shell command -v kubectl 2>/dev/null || echo /usr/bin/kubectl)
PYTHON ?= python3
TOOLS_DIR := $(CURDIR)/target/tools
VENV := $(TOOLS_DIR)/venv
KUBERNETES_VALIDATE := $(VENV)/bin/kubernetes-validate
IMAGE ?= ghcr.io/stead-dev/stead:0.1.0
DEMO_DIR := $(CURDIR)/.demo
DEMO_LISTEN ?= 127.0.0.1:18443
DEMO_METRICS ?= 127.0.0.1:19090
CRD := manifests/crds/databaseclusters.stead.dev.yaml
BACKUP_CRD := manifests/crds/databasebackups.stead.dev.yaml
APP_CRD := manifests/crds/apps.stead.dev.yaml

.PHONY: all build test fmt fmt-check clippy unit tools validate-manifests crds certs demo \
        run-webhook run-controller image deploy undeploy e2e bench bench-webhook bench-controller clean

all: build

build:
	$(CARGO) build --workspace --all-targets

## test: formatting, lints, every test, and offline schema validation of the rendered manifests.
test: fmt-check clippy unit

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The manifest tests shell out to kubernetes-validate, so the tool is installed first.
unit: tools
	$(CARGO) test --workspace

## tools: the offline Kubernetes schema validator (PyPI's kubernetes-validate) in a private venv.
tools: $(KUBERNETES_VALIDATE)

$(KUBERNETES_VALIDATE):
	mkdir -p $(TOOLS_DIR)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0

## crds: regenerate the committed CRDs from the Rust types.
crds:
	$(CARGO) run --quiet -p stead-crds --bin crdgen -- databaseclusters > $(CRD).tmp
	mv $(CRD).tmp $(CRD)
	$(CARGO) run --quiet -p stead-crds --bin crdgen -- databasebackups > $(BACKUP_CRD).tmp
	mv $(BACKUP_CRD).tmp $(BACKUP_CRD)
	$(CARGO) run --quiet -p stead-crds --bin crdgen -- apps > $(APP_CRD).tmp
	mv $(APP_CRD).tmp $(APP_CRD)

## validate-manifests: render every kustomize overlay, validate it offline against the Kubernetes
## schemas, and run the Argo CD health check (also part of `make test`).
validate-manifests: tools
	KUBECTL=$(KUBECTL) KUBERNETES_VALIDATE=$(KUBERNETES_VALIDATE) \
	  $(CARGO) test -p stead-tests --test manifests --test argocd_health

## image: build the one image holding stead-webhook and stead-controller (needs a Docker engine).
image:
	docker build --tag $(IMAGE) .

## deploy: install into the current kubectl context (cert-manager must already be installed).
deploy:
	$(KUBECTL) apply -k manifests/default
	$(KUBECTL) -n stead-system wait --for=condition=Ready certificate/stead-webhook-serving --timeout=180s
	$(KUBECTL) -n stead-system rollout status deployment/stead-webhook --timeout=180s
	$(KUBECTL) -n stead-system rollout status deployment/stead-controller --timeout=180s

## undeploy: remove stead. DatabaseClusters are deleted first, while the controller still runs to
## remove their finalizers; a cluster with deletionProtection: true stops the undeploy (the webhook
## refuses it), so nothing is deleted by surprise. Volumes and credentials Secrets are kept.
undeploy:
	if $(KUBECTL) get crd databaseclusters.stead.dev >/dev/null 2>&1; then \
	  $(KUBECTL) delete databaseclusters.stead.dev --all --all-namespaces --wait --timeout=300s; \
	fi
	$(KUBECTL) delete -k manifests/default --ignore-not-found

## e2e: envtest-style suite against a real kube-apiserver, with a stand-in kubelet that runs the database
## pods as local processes (as root: it runs them as the postgres user). Needs KUBEBUILDER_ASSETS (kube-apiserver,
## etcd[, kube-controller-manager]) and kubectl; without them it prints why it skipped and passes.
e2e:
	$(CARGO) build -p stead-webhook -p stead-controller -p stead-instance
	$(CARGO) test -p stead-tests --test e2e -- --nocapture

## bench: webhook and controller benchmarks (figures only, nothing asserted).
bench: bench-webhook bench-controller

## bench-controller: issue 13's figures for 100, 500 and 1,000 clusters against the e2e control plane
## when KUBEBUILDER_ASSETS is set, otherwise the reconcile function against an in-process mock API.
## Pass flags with BENCH_CONTROLLER_ARGS, e.g. "--clusters 500 --concurrency 16 --repeat 3".
BENCH_CONTROLLER_ARGS ?=
bench-controller:
	$(CARGO) build --release -p stead-controller -p stead-instance
	$(CARGO) run --release -p stead-tests --bin bench-controller -- $(BENCH_CONTROLLER_ARGS)

## certs: a development CA and serving certificate for localhost/127.0.0.1 in target/certs
## (the CA is reused, so a second run rotates only the serving certificate).
certs:
	$(CARGO) run --quiet -p stead-certs -- --out-dir target/certs --dns localhost --ip 127.0.0.1 --reuse-ca

## run-webhook: serve the webhook on 127.0.0.1:8443 with the development certificate.
run-webhook: certs
	$(CARGO) run -p stead-webhook -- serve --listen 127.0.0.1:8443 --cert-dir target/certs --metrics-listen 127.0.0.1:9090

## run-controller: run the controller against the current kubeconfig context (install the CRD first:
## kubectl apply -k manifests/crds).
run-controller:
	$(CARGO) run -p stead-controller -- --health-listen 127.0.0.1:8081 --metrics-listen 127.0.0.1:8080

## demo: the main job. Start stead-webhook over TLS on loopback, send every example through /mutate
## and /validate as the API server would, print what `kubectl apply` would show, then stop it.
## Valid examples must be admitted and invalid ones refused, or the demo fails.
demo:
	$(CARGO) build --quiet -p stead-webhook -p stead-certs
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	@echo "==> development CA and serving certificate for localhost / 127.0.0.1"
	./target/debug/stead-certs --out-dir $(DEMO_DIR)/certs --dns localhost --ip 127.0.0.1
	@echo "==> stead-webhook serve on https://$(DEMO_LISTEN) (metrics on http://$(DEMO_METRICS))"
	@./target/debug/stead-webhook serve --listen $(DEMO_LISTEN) --cert-dir $(DEMO_DIR)/certs \
	    --metrics-listen $(DEMO_METRICS) > $(DEMO_DIR)/webhook.log 2>&1 & \
	  pid=$$!; \
	  trap 'kill -TERM $$pid 2>/dev/null; wait $$pid 2>/dev/null || true' EXIT; \
	  check() { ./target/debug/stead-webhook check --server https://localhost:$(lastword $(subst :, ,$(DEMO_LISTEN))) \
	    --ca-file $(DEMO_DIR)/certs/ca.crt -f "$$@" 2>&1; }; \
	  echo; echo "==> valid examples: admitted, with defaults and warnings"; \
	  check manifests/examples/valid-*.yaml || { echo "demo: a valid example was refused" >&2; exit 1; }; \
	  echo; echo "==> invalid examples: refused, every problem at once"; \
	  for f in manifests/examples/invalid-*.yaml; do \
	    echo "--- $$f: $$(head -n1 $$f | sed 's/^# //')"; \
	    if check "$$f"; then echo "demo: $$f was admitted" >&2; exit 1; fi; \
	  done; \
	  echo; echo "==> what the server counted (/metrics)"; \
	  exec 3<>/dev/tcp/$(firstword $(subst :, ,$(DEMO_METRICS)))/$(lastword $(subst :, ,$(DEMO_METRICS))); \
	  printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3; \
	  grep '^stead_webhook_requests_total' <&3 || true; exec 3<&-; \
	  echo; echo "==> stopping the webhook (SIGTERM drains in-flight requests)"
	@echo "demo: done; server log in $(DEMO_DIR)/webhook.log"

## bench-webhook: load-test the webhook over TLS on loopback (figures only; about 25 s).
bench-webhook:
	$(CARGO) build --release -p stead-webhook --bin stead-webhook --example bench
	./target/release/examples/bench

clean:
	$(CARGO) clean
	rm -rf $(DEMO_DIR)
