//! Conversions between `std::time::Duration` and `google.protobuf.Duration`.

/// Converts to the protobuf form. Durations beyond the protobuf range (about 292 billion
/// years) saturate instead of failing: no real timeout or grace period gets there.
pub fn to_proto(duration: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

/// Converts from the protobuf form; `None` for a negative duration, which has no
/// `std::time::Duration` counterpart.
pub fn from_proto(duration: &prost_types::Duration) -> Option<std::time::Duration> {
    std::time::Duration::try_from(*duration).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn round_trips_seconds_and_nanos() {
        let duration = Duration::new(3, 250_000_000);
        let proto = to_proto(duration);
        assert_eq!((proto.seconds, proto.nanos), (3, 250_000_000));
        assert_eq!(from_proto(&proto), Some(duration));
    }

    #[test]
    fn saturates_beyond_the_protobuf_range() {
        let proto = to_proto(Duration::MAX);
        assert_eq!(proto.seconds, i64::MAX);
    }

    #[test]
    fn rejects_negative_durations() {
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(from_proto(&negative), None);
    }

    #[test]
    fn normalizes_mixed_sign_fields() {
        // 2s - 0.5s: not canonical protobuf, but a peer may still send it.
        let proto = prost_types::Duration {
            seconds: 2,
            nanos: -500_000_000,
        };
        assert_eq!(from_proto(&proto), Some(Duration::from_millis(1500)));
    }
}
