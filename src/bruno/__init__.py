"""Bruno: abliteration pipeline library.

The package is split by concern: configuration (`config`), file handling (`io`), prompt sets (`prompts`), model access
(`model`), refusal directions (`directions`), the weight edit and its hook equivalent (`ablation`), the Optuna search
(`search`, `trial`), trial selection (`select`), evaluation (`evaluate`, `refusal`, `stats`) and the refusal organism
(`organism`). Importing the package itself is cheap: heavy libraries load only in the modules that need them.
"""

__version__ = "0.1.0"
