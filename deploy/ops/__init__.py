"""Operations: the local multi-node cluster, cluster commands, Prometheus, the Grafana dashboard."""
