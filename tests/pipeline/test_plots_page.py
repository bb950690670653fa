"""The offline plots page: stages/plots_page.py writes an HTML template for `dvc plots show`
with Vega, Vega-Lite and vega-embed inlined, in the major versions DVC's templates need, and
nothing loaded over the network; .dvc/config points DVC at it."""

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import vl_convert
import yaml
from configobj import ConfigObj
from dvc_render import render_html
from dvc_render.html import HTML
from dvc_render.vega import VegaRenderer
from dvc_render.vega_templates import TEMPLATES

import plots_page
from conftest import REPO


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text of its scripts."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self.in_script = False
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self.in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_script = False

    def handle_data(self, data: str) -> None:
        if self.in_script:
            self.scripts[-1] += data


def remote_references(page: str) -> list[str]:
    """Scripts loaded from a file, stylesheets or other links, and any http(s):// or
    protocol-relative address in a tag's attributes."""
    return [f"<{tag} {attrs}>" for tag, attrs in Tags(page).tags
            if (tag == "script" and "src" in attrs) or tag == "link"
            or any(value and re.match(r"\s*(https?:)?//", value, re.IGNORECASE)
                   for value in attrs.values())]


def major(version: str) -> int:
    return int(version.lstrip("v").split(".")[0])


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The template as the stage writes it, run in a folder with only params.yaml."""
    work = tmp_path_factory.mktemp("stage")
    shutil.copy2(REPO / "params.yaml", work / "params.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        plots_page.main()
    written = sorted(path.relative_to(work).as_posix() for path in work.rglob("*"))
    assert written == ["params.yaml", "plots", "plots/page.html"]  # no temporary file left
    return (work / plots_page.OUT).read_text(encoding="utf-8")


def test_page_inlines_vega_vega_lite_and_vega_embed(page: str) -> None:
    scripts = Tags(page).scripts
    assert len(scripts) == 1
    code = scripts[0]
    assert vl_convert.javascript_bundle(vl_version=plots_page.VEGA_LITE) in code
    # Each library's own version constant, as its code carries it.
    assert f'"{vl_convert.get_vega_version()}"' in code
    assert re.search(rf'"{re.escape(plots_page.VEGA_LITE)}\.\d+"', code)
    assert f'"{vl_convert.get_vega_embed_version()}"' in code
    assert "window.vegaEmbed=" in code


def test_bundle_has_the_major_versions_dvc_templates_are_written_for() -> None:
    cdn = dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@([\d.]+)", VegaRenderer.SCRIPTS))
    assert set(cdn) == {"vega", "vega-lite", "vega-embed"}
    assert major(vl_convert.get_vega_version()) == major(cdn["vega"])
    assert major(plots_page.VEGA_LITE) == major(cdn["vega-lite"])
    assert major(vl_convert.get_vega_embed_version()) == major(cdn["vega-embed"])
    schemas = {template.DEFAULT_CONTENT["$schema"] for template in TEMPLATES}
    assert schemas == {"https://vega.github.io/schema/vega-lite/"
                       f"v{major(plots_page.VEGA_LITE)}.json"}


def test_page_has_dvc_placeholder_and_not_the_cdn_one(page: str) -> None:
    assert page.count(HTML.PLOTS_PLACEHOLDER_FORMAT_STR) == 1
    assert "{" + HTML.SCRIPTS_PLACEHOLDER + "}" not in page  # where DVC puts the CDN tags
    HTML(page)  # DVC's own check: raises MissingPlaceholderError without {plot_divs}


def test_page_loads_nothing_over_the_network(page: str) -> None:
    assert remote_references(page) == []
    assert [tag for tag, _ in Tags(page).tags].count("script") == 1


def test_reference_check_sees_dvc_default_cdn_tags() -> None:
    assert len(remote_references(VegaRenderer.SCRIPTS)) == 3
    assert remote_references('<link rel="stylesheet" href="//x.org/a.css">')


# As a page loads it: the inline script first, then DVC's plot scripts (`var spec = ...;
# vegaEmbed(...)`) in the same global scope. Node stands in for the browser's window.
LOAD = """globalThis.window = globalThis;
require("vm").runInThisContext(require("fs").readFileSync(process.argv[1], "utf8"));
require("vm").runInThisContext("var spec = {};");
console.log(typeof window.vegaEmbed);
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run JavaScript")
def test_inlined_script_defines_vega_embed_for_dvc_plot_scripts(page: str,
                                                                  tmp_path: Path) -> None:
    script = tmp_path / "inline.js"
    script.write_text(Tags(page).scripts[0], encoding="utf-8")
    result = subprocess.run(["node", "-e", LOAD, str(script)], capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["function"]


@pytest.mark.parametrize("bad", ["s='</script>'", "s='</SCRIPT>'", "s='<!--'",
                                 "s='{scripts}'", "s='{plot_divs}'"])
def test_a_bundle_that_would_break_the_page_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot be inlined"):
        plots_page.page_html(f"window.vegaEmbed=1;{bad};")


def test_filled_page_has_the_plots_and_no_cdn(page: str, tmp_path: Path) -> None:
    template = tmp_path / "page.html"
    template.write_text(page, encoding="utf-8")
    points = [{"step": i, "loss": 1 / (i + 1), "rev": "workspace", "filename": "loss.tsv",
               "field": "loss"} for i in range(3)]
    plot = VegaRenderer(points, "Loss", template="linear", x="step", y="loss")
    render_html([plot], tmp_path / "out" / "index.html", html_template=template)
    filled = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "vegaEmbed('#Loss', spec)" in filled and "cdn.jsdelivr" not in filled
    assert remote_references(filled) == []


def test_dvc_config_points_at_the_stage_output() -> None:
    configured = ConfigObj(str(REPO / ".dvc/config"))["plots"]["html_template"]
    # DVC reads a relative plots.html_template from the .dvc folder (dvc/commands/plots.py).
    assert (REPO / ".dvc" / configured).resolve() == (REPO / plots_page.OUT).resolve()


def test_dvc_yaml_builds_the_template() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    builders = [stage for stage in stages.values()
                if plots_page.OUT.as_posix() in stage.get("outs", [])]
    assert len(builders) == 1
    assert builders[0]["cmd"] == "python stages/plots_page.py"
    assert "requirements.txt" in builders[0]["deps"]


def dvc(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.dvc_features
def test_dvc_plots_show_writes_an_offline_page(page: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "plots").mkdir(parents=True)
    (repo / "loss.tsv").write_text("step\tloss\n0\t1.0\n1\t0.5\n2\t0.25\n")
    (repo / "confusion.json").write_text(
        '[{"actual": "a", "predicted": "a"}, {"actual": "b", "predicted": "a"}]')
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": [
        {"Loss": {"template": "linear", "x": "step", "y": {"loss.tsv": "loss"}}},
        {"Confusion": {"template": "confusion", "x": "actual",
                       "y": {"confusion.json": "predicted"}}}]}))
    dvc(["init", "--no-scm", "-q"], repo)
    dvc(["plots", "show", "-o", "default"], repo)  # no template yet: DVC's CDN page
    assert "cdn.jsdelivr" in (repo / "default/index.html").read_text()

    (repo / plots_page.OUT).write_text(page, encoding="utf-8")
    configured = ConfigObj(str(REPO / ".dvc/config"))["plots"]["html_template"]
    dvc(["config", "plots.html_template", configured], repo)
    dvc(["plots", "show"], repo)  # the config, as a plain `dvc plots show` reads it
    dvc(["plots", "show", "--html-template", str(plots_page.OUT), "-o", "given"], repo)
    for out in ("dvc_plots", "given"):
        shown = (repo / out / "index.html").read_text(encoding="utf-8")
        assert "cdn.jsdelivr" not in shown and remote_references(shown) == []
        assert "vegaEmbed('#Loss', spec)" in shown and "vegaEmbed('#Confusion', spec)" in shown
        assert f'"{vl_convert.get_vega_embed_version()}"' in shown
