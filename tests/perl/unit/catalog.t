#!/usr/bin/perl -T

# The shim against protocol/catalog.json: exactly one public sub per catalogue method of its side
# (plus the locally answered ones), nothing more, and the client's deadlines equal the catalogue's.

use strict;
use warnings;

use Test::More;

use DirBackupTest::Catalog qw(catalog methods_of_side public_subs);
use PVE::Storage::Custom::DirBackupPlugin;
use PVE::BackupProvider::Plugin::DirBackup;
use PVE::DirBackup::Client;

my $cat = catalog();

sub set_ok {
    my ($got, $want, $name) = @_;
    my %got = map { $_ => 1 } @$got;
    my %want = map { $_ => 1 } @$want;
    my @missing = sort grep { !$got{$_} } keys %want;
    my @extra = sort grep { !$want{$_} } keys %got;
    ok(!@missing && !@extra, $name)
        or diag("missing: @missing\nnot in the catalogue: @extra");
}

is($cat->{protocol}, $PVE::DirBackup::Client::PROTOCOL, 'client speaks the catalogue protocol version');

set_ok(
    public_subs('PVE::Storage::Custom::DirBackupPlugin'),
    [keys %{ methods_of_side('storage') }, @{ $cat->{local}->{storage} }],
    'storage plugin: public subs == storage methods + local.storage',
);

set_ok(
    public_subs('PVE::BackupProvider::Plugin::DirBackup'),
    [keys %{ methods_of_side('provider') }, @{ $cat->{local}->{provider} }],
    'provider: public subs == provider methods + local.provider',
);

subtest 'inherited methods are not overridden' => sub {
    my %defined = map { $_ => 1 } @{ public_subs('PVE::Storage::Custom::DirBackupPlugin') };
    ok(!$defined{$_}, "$_ left to PVE::Storage::Plugin") for @{ $cat->{inherited}->{storage} };
};

subtest 'client deadlines equal the catalogue' => sub {
    my $methods = $cat->{methods};
    my %timeout = %PVE::DirBackup::Client::TIMEOUT;
    set_ok([keys %timeout], [keys %$methods], 'one deadline entry per catalogue method');
    for my $m (sort keys %$methods) {
        is($timeout{$m}, $methods->{$m}->{timeout}, "$m: " . ($methods->{$m}->{timeout} // 'none'));
    }
};

is($cat->{framing}->{'max-reply-line-bytes'}, $PVE::DirBackup::Client::MAX_REPLY_LINE,
    'client reply line limit equals the catalogue');

done_testing();
