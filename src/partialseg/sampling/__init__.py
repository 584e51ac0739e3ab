"""Samplers that decide which training cases a batch draws."""

from partialseg.sampling.balanced import DatasetBalancedSampler

__all__ = ["DatasetBalancedSampler"]
