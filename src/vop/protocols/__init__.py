"""The metric code of outside retrieval benchmarks (VPR recall@N, Revisited Oxford/Paris, GL3D), as pure functions."""
