"""Raylight: train vision models on Kubernetes with Ray, Lightning and MLflow."""
