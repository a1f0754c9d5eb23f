from colab_kit.cli import main

raise SystemExit(main())
