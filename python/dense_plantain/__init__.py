"""dense-plantain: paired-prompt probes of FLUX.2 [klein] attention units.

The flow is prompts -> capture (GPU, torch) -> capture file -> analyze (Rust statistics)
-> results. Each step is one module; no module reaches back up the chain.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dense-plantain")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
