//! Guest-visible device models. Each talks to the host only through small traits.
