"""shardcache.kubeflow_components."""
