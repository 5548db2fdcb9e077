from tnbc_pipeline.cli import main

main()
