from cftool.cli import run

run()
