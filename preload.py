"""Command-line options of the extension, parsed by the WebUI with its own."""


def preload(parser):
    parser.add_argument("--autolora-off", action="store_true",
                        help="load sd-webui-autolora with AutoLoRA switched off: requests that enable it "
                             "generate as usual and the console says so")
