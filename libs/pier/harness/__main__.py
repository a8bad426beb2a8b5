from pier.harness.server import main

main()
