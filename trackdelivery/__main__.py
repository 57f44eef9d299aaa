from trackdelivery.program import run

run()
