//! The answers hyper writes by itself, before any handler runs, when a request's head cannot
//! be parsed (400), its target is too long (414) or its head is too large (431): hyper gives
//! them no body, so they are rewritten, as they are written, into the same `{"message": ...}`
//! answers as every other error.

/// Most header fields and most bytes (request line included) of a request head.
pub(crate) const MAX_HEADER_FIELDS: usize = 100;
pub(crate) const MAX_HEAD_BYTES: usize = 32 * 1024;

fn message_for(status: u16) -> Option<String> {
    match status {
        400 => Some(
            "the request is not valid HTTP/1.1: its request line or a header field is malformed"
                .to_owned(),
        ),
        414 => Some("the request target (URI) is too long".to_owned()),
        431 => Some(format!(
            "the request head is too large: at most {MAX_HEADER_FIELDS} header fields and \
             {MAX_HEAD_BYTES} bytes"
        )),
        _ => None,
    }
}

/// Given bytes hyper is about to write, the same answer with a JSON body, when they are a
/// bodiless 400, 414 or 431 hyper wrote by itself (every answer of a handler has a JSON body).
pub(crate) fn json_error_response(written: &[u8]) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(written).ok()?;
    let head = head.strip_suffix("\r\n\r\n")?;
    if head.contains("\r\n\r\n") {
        return None;
    }
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()?;
    let message = message_for(status)?;
    let fields: Vec<&str> = lines.collect();
    let field_is = |line: &str, name: &str| {
        line.split_once(':')
            .is_some_and(|(field, _)| field.trim().eq_ignore_ascii_case(name))
    };
    let bodiless = fields.iter().any(|line| {
        field_is(line, "content-length")
            && line.split_once(':').is_some_and(|(_, v)| v.trim() == "0")
    });
    if !bodiless || fields.iter().any(|line| field_is(line, "content-type")) {
        return None;
    }
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for line in fields {
        if !field_is(line, "content-length") && !field_is(line, "connection") {
            response.push_str(line);
            response.push_str("\r\n");
        }
    }
    response.push_str("\r\n");
    response.push_str(&body);
    Some(response.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bodiless_431_from_hyper_gets_a_json_body_and_keeps_its_other_fields() {
        let hyper_wrote = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\ndate: Sat, 21 Nov 2026 12:00:00 GMT\r\n\r\n";
        let rewritten = String::from_utf8(json_error_response(hyper_wrote).unwrap()).unwrap();
        let (head, body) = rewritten.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert!(head.contains("\r\ndate: Sat, 21 Nov 2026 12:00:00 GMT"));
        assert_eq!(head.matches("connection:").count(), 1);
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(body["message"].as_str().unwrap().contains("32768 bytes"));
    }

    #[test]
    fn answers_with_a_body_or_of_other_statuses_are_left_alone() {
        let cases: [&[u8]; 5] = [
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 14\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"{\"message\": \"HTTP/1.1 400 \"}",
        ];
        for written in cases {
            assert_eq!(
                json_error_response(written),
                None,
                "{}",
                String::from_utf8_lossy(written)
            );
        }
    }
}
