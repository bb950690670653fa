"""Stage `plots_page`: write plots/page.html, the HTML template `dvc plots show` fills (set
as `plots.html_template` in .dvc/config), so the plots page works offline.

DVC's default page loads Vega, Vega-Lite and vega-embed from a CDN, so without network it
stays blank. This template inlines the three instead, as bundled by the pinned
vl-convert-python package, in the major versions DVC's templates are written for (Vega 5,
Vega-Lite 5, vega-embed 6), and leaves out DVC's `{scripts}` placeholder, where the CDN
tags would go. The JavaScript comes from requirements.txt, not from a file kept in git.
"""

from pathlib import Path

import vl_convert

from medimg.errors import run
from medimg.io import atomic_path
from medimg.params import load_params

OUT = Path("plots/page.html")
VEGA_LITE = "5.21"  # DVC's vega templates declare the Vega-Lite v5 schema
# Where a script or HTML comment would end early, or text DVC replaces in the page.
NOT_INLINABLE = ("</script", "<!--", "{scripts}", "{plot_divs}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- {versions}, inlined from vl-convert-python by stages/plots_page.py -->
    <script type="text/javascript">
(() => {{  // the bundle's own top-level names stay out of the page's global scope
{bundle}
}})();
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def versions() -> str:
    return (f"Vega {vl_convert.get_vega_version()}, Vega-Lite {VEGA_LITE}, "
            f"vega-embed {vl_convert.get_vega_embed_version()}")


def page_html(bundle: str) -> str:
    """The template with `bundle` (JavaScript defining window.vegaEmbed) inlined."""
    found = [text for text in NOT_INLINABLE if text in bundle.lower()]
    if found:
        raise ValueError(f"the JavaScript bundle contains {found}: it cannot be inlined")
    return PAGE.format(bundle=bundle, versions=versions(),
                       refresh_tag="{refresh_tag}", plot_divs="{plot_divs}")


def main() -> None:
    load_params()  # every stage stops on a params error before any work
    page = page_html(vl_convert.javascript_bundle(vl_version=VEGA_LITE))
    with atomic_path(OUT) as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(f"plots_page: wrote {OUT} ({len(page) // 1024} KiB; {versions()})")


if __name__ == "__main__":
    run(main)
