package DirBackupTest::Catalog;

# protocol/catalog.json, the contract both sides test themselves against, as Perl data.

use strict;
use warnings;

use B ();
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use JSON;

use base qw(Exporter);
our @EXPORT_OK = qw(catalog catalog_path methods_of_side public_subs);

sub catalog_path {
    return abs_path(dirname(__FILE__) . '/../../../../protocol/catalog.json');
}

my $cached;

sub catalog {
    return $cached if $cached;
    my $path = catalog_path();
    open(my $fh, '<', $path) or die "cannot read $path: $!\n";
    local $/;
    my $text = <$fh>;
    close($fh);
    return $cached = JSON->new->utf8->decode($text);
}

# { name => entry } of the methods of one side (storage, provider, session)
sub methods_of_side {
    my ($side) = @_;
    my $m = catalog()->{methods};
    return { map { ($_ => $m->{$_}) } grep { $m->{$_}->{side} eq $side } keys %$m };
}

# Names of the subs a package itself defines (not imported, not aliased in from elsewhere) and
# that do not start with '_'.
sub public_subs {
    my ($package) = @_;
    no strict 'refs';
    my $stash = \%{"${package}::"};
    my @names;
    for my $name (sort keys %$stash) {
        next if $name =~ m/^_/ || $name =~ m/::$/;
        my $code = *{"${package}::$name"}{CODE} or next;
        my $cv = B::svref_2object($code);
        next if $cv->GV->STASH->NAME ne $package;
        push @names, $name;
    }
    return \@names;
}

1;
