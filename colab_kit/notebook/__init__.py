"""The notebook interface: a control panel of widgets that builds a Plan and runs the pipeline (:mod:`.panel`), with
the run's log lines, progress bars and loss plot in the panel (:mod:`.output`). ipywidgets is imported only when a
panel is built."""

from colab_kit.notebook.panel import ControlPanel, show_panel

__all__ = ["ControlPanel", "show_panel"]
