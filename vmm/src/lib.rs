//! microvmm library: configuration, host discovery, the platform plan, the VM build and run loop.
