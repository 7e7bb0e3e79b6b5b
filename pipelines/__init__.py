"""The study as a Kubeflow pipeline (KFP v2): definition, cluster settings, compile and submit."""
