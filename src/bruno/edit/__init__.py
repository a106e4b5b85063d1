"""The weight edit: what a parameter set means per layer and matrix (`plan`) and the edit itself, as a hook for trials
and baked into the weights for export (`ablation`)."""
