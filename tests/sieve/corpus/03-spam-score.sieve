require ["fileinto", "relational", "comparator-i;ascii-numeric"];
if header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "5" {
  fileinto "Junk";
} elsif header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "1" {
  fileinto "Maybe";
}
