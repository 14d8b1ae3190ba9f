from healthdock_mirror.cli import main

main()
