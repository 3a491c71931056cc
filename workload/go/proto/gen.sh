#!/usr/bin/env bash
# Regenerates internal/inventorypb from inventory.proto. Needs protoc plus
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
#   go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
# on PATH. The generated code is committed, so building does not need protoc.
set -euo pipefail
cd "$(dirname "$0")"
protoc --go_out=../internal/inventorypb --go_opt=paths=source_relative \
  --go-grpc_out=../internal/inventorypb --go-grpc_opt=paths=source_relative \
  inventory.proto
