package api

import _ "github.com/jaegertracing/jaeger/model/json"
