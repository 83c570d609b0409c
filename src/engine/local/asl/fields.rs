//! The field reader every parser uses: one JSON object inside a state (the state itself, a
//! Retrier, a Catcher, a choice rule) with the prefix that locates its fields in error messages.

use serde_json::{Map, Value};

use super::errors::DefinitionError;

/// The fields of one JSON object inside a state.
#[derive(Debug)]
pub(super) struct Fields<'a> {
    state: &'a str,
    prefix: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// The fields of `state` itself.
    pub(super) fn of_state(state: &'a str, map: &'a Map<String, Value>) -> Self {
        Fields {
            state,
            prefix: String::new(),
            map,
        }
    }

    /// The fields of an object nested at `field` (e.g. `Not`), labelled `{prefix}{field}.`.
    pub(super) fn nested(&self, field: &str, map: &'a Map<String, Value>) -> Self {
        Fields {
            state: self.state,
            prefix: format!("{}{field}.", self.prefix),
            map,
        }
    }

    /// The name of the state these fields belong to.
    pub(super) fn state(&self) -> &'a str {
        self.state
    }

    /// Where this object sits, e.g. `Choices[0].Not` (empty for the state itself).
    pub(super) fn location(&self) -> &str {
        self.prefix.trim_end_matches('.')
    }

    /// `field` as error messages name it, e.g. `Retry[0].MaxAttempts`.
    pub(super) fn label(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    pub(super) fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &'a str> {
        self.map.keys().map(String::as_str)
    }

    pub(super) fn invalid(&self, field: &str, reason: impl Into<String>) -> DefinitionError {
        DefinitionError::InvalidField {
            state: self.state.to_owned(),
            field: self.label(field),
            reason: reason.into(),
        }
    }

    pub(super) fn invalid_state(&self, reason: impl Into<String>) -> DefinitionError {
        DefinitionError::InvalidState {
            state: self.state.to_owned(),
            reason: reason.into(),
        }
    }

    pub(super) fn unknown_field(
        &self,
        field: &str,
        within: &str,
        allowed: &str,
    ) -> DefinitionError {
        DefinitionError::UnknownField {
            state: self.state.to_owned(),
            field: self.label(field),
            within: within.to_owned(),
            allowed: allowed.to_owned(),
        }
    }

    /// Refuses any field not in `allowed`; `within` says what holds the fields ("a Retrier").
    pub(super) fn allow_only(&self, within: &str, allowed: &[&str]) -> Result<(), DefinitionError> {
        match self.keys().find(|key| !allowed.contains(key)) {
            Some(field) => Err(self.unknown_field(field, within, &allowed.join(", "))),
            None => Ok(()),
        }
    }

    pub(super) fn optional_string(&self, field: &str) -> Result<Option<&'a str>, DefinitionError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(self.invalid(field, "must be a string")),
        }
    }

    pub(super) fn required_string(&self, field: &str) -> Result<&'a str, DefinitionError> {
        self.optional_string(field)?
            .ok_or_else(|| self.invalid(field, "is required"))
    }

    pub(super) fn optional_bool(&self, field: &str) -> Result<Option<bool>, DefinitionError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(*value)),
            Some(_) => Err(self.invalid(field, "must be a boolean")),
        }
    }

    pub(super) fn non_negative_integer(&self, field: &str) -> Result<Option<u64>, DefinitionError> {
        self.get(field)
            .map(|value| {
                value
                    .as_u64()
                    .ok_or_else(|| self.invalid(field, "must be a non-negative integer"))
            })
            .transpose()
    }

    pub(super) fn positive_integer(&self, field: &str) -> Result<Option<u64>, DefinitionError> {
        match self.non_negative_integer(field) {
            Ok(Some(0)) | Err(_) => Err(self.invalid(field, "must be a positive integer")),
            other => other,
        }
    }

    /// The objects of the array at `field` (none when it is absent), each labelled
    /// `{field}[{index}].`.
    pub(super) fn objects(&self, field: &str) -> Result<Vec<Fields<'a>>, DefinitionError> {
        let Some(value) = self.get(field) else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = value else {
            return Err(self.invalid(field, "must be an array of objects"));
        };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::Object(map) => Ok(self.nested(&format!("{field}[{index}]"), map)),
                _ => Err(self.invalid(&format!("{field}[{index}]"), "must be an object")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("expected an object, got {other}"),
        }
    }

    #[test]
    fn nested_objects_are_labelled_by_where_they_sit() {
        let state = map(json!({ "Retry": [{ "MaxAttempts": "x" }] }));
        let fields = Fields::of_state("S", &state);
        let retriers = fields.objects("Retry").unwrap();
        assert_eq!(retriers[0].location(), "Retry[0]");
        let error = retriers[0].non_negative_integer("MaxAttempts").unwrap_err();
        assert_eq!(
            error.to_string(),
            "state \"S\": field \"Retry[0].MaxAttempts\" must be a non-negative integer"
        );
    }

    #[test]
    fn a_list_of_objects_must_hold_only_objects() {
        let state = map(json!({ "Catch": [{}, 3] }));
        let error = Fields::of_state("S", &state).objects("Catch").unwrap_err();
        assert!(
            error.to_string().contains("\"Catch[1]\" must be an object"),
            "{error}"
        );
    }

    #[test]
    fn a_field_outside_the_allowed_list_is_named_with_the_allowed_ones() {
        let state = map(json!({ "Type": "Pass", "Nxet": "x" }));
        let error = Fields::of_state("S", &state)
            .allow_only("a Pass state", &["Type", "Next"])
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "state \"S\": field \"Nxet\" is not supported in a Pass state (allowed: Type, Next)"
        );
    }
}
