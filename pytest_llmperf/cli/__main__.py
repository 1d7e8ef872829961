from pytest_llmperf.cli import main

raise SystemExit(main())
