"""Reports built from :mod:`rnnlab.diagnostics` and training metrics: PNG figures and one HTML page."""

from .figures import (plot_curves, plot_gates, plot_heatmap, plot_jacobian_spectra, plot_profiles,
                      plot_weight_spectra, save)
from .html import Section, write_html

__all__ = ["plot_heatmap", "plot_profiles", "plot_jacobian_spectra", "plot_weight_spectra", "plot_gates",
           "plot_curves", "save", "Section", "write_html"]
