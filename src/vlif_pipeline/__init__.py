"""vlif-pipeline: from raw Amazon review dumps to trained VLIF multimodal recommenders."""

__version__ = "0.1.0"
