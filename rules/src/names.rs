//! Closed sets of names (policies, refusal codes, metric labels): each
//! variant and its text are written once, so `ALL`, `as_str` and `FromStr`
//! can never disagree and a new variant needs no other list updated.

/// A name outside a closed set (a stored row written by a newer version, a
/// hand-edited one, a bad flag); `kind` is the set's type name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct Unknown {
    pub kind: &'static str,
    pub value: String,
}

// For the macro's serde impls, so a crate using it needs no serde of its own.
#[doc(hidden)]
pub use serde as __serde;

/// A fieldless enum with `ALL` (in declaration order), `as_str`, `index`
/// (its position in `ALL`), `FromStr`, `TryFrom<String>` (for database rows)
/// and serde as the text, from one `Variant = "text"` list.
#[macro_export]
macro_rules! names {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The position in `ALL`, for arrays indexed by variant.
            pub fn index(self) -> usize {
                self as usize
            }
        }

        impl ::core::str::FromStr for $name {
            type Err = $crate::names::Unknown;

            fn from_str(text: &str) -> ::core::result::Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .find(|variant| variant.as_str() == text)
                    .copied()
                    .ok_or_else(|| $crate::names::Unknown { kind: stringify!($name), value: text.to_string() })
            }
        }

        impl ::core::convert::TryFrom<String> for $name {
            type Error = $crate::names::Unknown;

            fn try_from(text: String) -> ::core::result::Result<Self, Self::Error> {
                text.parse()
            }
        }

        impl $crate::names::__serde::Serialize for $name {
            fn serialize<S: $crate::names::__serde::Serializer>(&self, serializer: S) -> ::core::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> $crate::names::__serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::names::__serde::Deserializer<'de>>(deserializer: D) -> ::core::result::Result<Self, D::Error> {
                let text = <::std::borrow::Cow<'de, str> as $crate::names::__serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(<D::Error as $crate::names::__serde::de::Error>::custom)
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    crate::names! {
        enum Sample {
            First = "first",
            Second = "second",
        }
    }

    #[test]
    fn names_round_trip_and_index_all() {
        for (i, sample) in Sample::ALL.iter().enumerate() {
            assert_eq!(sample.index(), i);
            assert_eq!(sample.as_str().parse::<Sample>(), Ok(*sample));
            assert_eq!(sample.to_string(), sample.as_str());
        }
        assert_eq!(Sample::First.as_str(), "first");
        assert_eq!("third".parse::<Sample>(), Err(super::Unknown { kind: "Sample", value: "third".into() }));
    }
}
