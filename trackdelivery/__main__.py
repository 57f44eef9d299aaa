from trackdelivery.cli import run

run()
