package api

// Placeholder imports while the server is written; removed once the real
// files use these packages.
import (
	_ "github.com/hibiken/asynqmon"
	_ "github.com/labstack/echo/v4"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
)
