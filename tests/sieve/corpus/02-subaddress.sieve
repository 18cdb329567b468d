require ["fileinto", "subaddress", "envelope", "variables"];
if envelope :detail :matches "to" "*" {
  if string :is "${1}" "" { stop; }
  fileinto "Sub/${1}";
}
