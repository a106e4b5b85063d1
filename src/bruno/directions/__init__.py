"""Refusal directions: the per-layer difference of means and the `directions.pt` file (`mean`), the alternative
methods (`methods`: contrastive PCA, probe, ensemble, activation calibration), concept cones (`cones`) and the CAA
compliance direction (`caa`)."""
