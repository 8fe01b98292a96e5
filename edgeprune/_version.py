"""The package version, in a leaf module any layer may import (without loading the package)."""

__version__ = "0.1.0"
