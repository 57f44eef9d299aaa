from trackdelivery.cli import main

main()
