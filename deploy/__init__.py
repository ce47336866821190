"""Monitoring of a streamer deployment: Prometheus's scrape configuration and alert rules
(`deploy/prometheus/`) and the Grafana dashboard, built as code (`deploy/grafana/`).

docker-compose.yml mounts these files; tests/unit/test_alerts.py, tests/unit/test_dashboard.py
and tests/integration/test_prometheus.py check them against promtool and a real Prometheus.
"""
