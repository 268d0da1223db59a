from printfleet.cli import main

main()
