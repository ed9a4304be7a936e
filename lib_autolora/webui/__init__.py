"""What every WebUI host shares: a generation's lifecycle, the accordion, settings and X/Y/Z axes.
The WebUI's own objects (options, gradio components, the X/Y/Z module) are handed in by the script."""
