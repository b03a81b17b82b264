"""Argo CD's own Lua VM (the Go wrapper in this folder) for the chart's health checks."""
