// Package k8s holds DeepTrace's Kubernetes manifests (a kustomize base,
// the elasticsearch component, and the dev and production overlays) and
// the Dockerfile of the one image they run. It has no Go code: its test
// renders every overlay with kustomize, decodes each object strictly with
// the Kubernetes API types and checks the references between them and
// against the deeptrace binary (commands, flags, probe paths, ports).
package k8s
