#!/usr/bin/perl -T

# End to end: the real shim classes against the real dirbackupd, on a storage the C# test harness
# filled with known backups. Not part of the unit suite. The harness runs it as
#
#   DIRBACKUP_SOCKET=<socket> DIRBACKUP_E2E=<fixture.json> \
#       prove -I perl-shim -I tests/perl/lib tests/perl/e2e/storage.t
#
# fixture.json: {"storeid":"e2e","scfg":{"type":"dirbackup","path":"/tmp/x/store","content":{"backup":1}},
#   "backups":[{"volname":"backup/100/qemu-1700000000","vmid":100,"subtype":"qemu","ctime":1700000000,
#   "size":12345,"notes":"..."|null,"protected":true|false,"parent":"backup/100/qemu-..."|null,
#   "guest-config-base64":"..."}]}
#
# It checks the catalogue contract (protocol/catalog.json) and the documented errors; it changes
# the storage (notes, protection, one deleted backup), so the harness gives it a fresh one.

use strict;
use warnings;

use Test::More;

use JSON;
use MIME::Base64 qw(decode_base64);

use PVE::Storage::Custom::DirBackupPlugin;

binmode(Test::More->builder->$_, ':encoding(UTF-8)') for qw(output failure_output todo_output);

BAIL_OUT('DIRBACKUP_SOCKET is not set: this test needs a running dirbackupd') if !$ENV{DIRBACKUP_SOCKET};
BAIL_OUT('DIRBACKUP_E2E is not set: this test needs the fixture description') if !$ENV{DIRBACKUP_E2E};

my $fixture = do {
    open(my $fh, '<', $ENV{DIRBACKUP_E2E}) or BAIL_OUT("cannot read $ENV{DIRBACKUP_E2E}: $!");
    local $/;
    my $text = <$fh>;
    eval { JSON->new->utf8->decode($text) } or BAIL_OUT("fixture is not JSON: $@");
};

my $plugin = 'PVE::Storage::Custom::DirBackupPlugin';
my $storeid = $fixture->{storeid} // BAIL_OUT('fixture has no storeid');
my $scfg = $fixture->{scfg} // BAIL_OUT('fixture has no scfg');
my @backups = @{ $fixture->{backups} // [] };
BAIL_OUT('fixture lists no backups') if !@backups;
my %by_volname = map { $_->{volname} => $_ } @backups;

my @logged;
my $provider = $plugin->new_backup_provider($scfg, $storeid, sub { push @logged, [@_] });

my $NOTES = "Sicherung vor dem Update \x{2713}";

# ---- helpers ---------------------------------------------------------------------------------

sub volid { return "$storeid:$_[0]" }

sub strip_storeid {
    my ($name) = @_;
    return undef if !defined($name);
    return $name =~ s/^\Q$storeid\E://r;
}

sub archive_name { return $_[0] =~ s!^backup/!!r }

sub listing {
    my ($vmid, $content_types) = @_;
    my $list = $plugin->list_volumes($storeid, $scfg, $vmid, $content_types);
    return { map { $_->{volid} => $_ } @$list };
}

sub one_line_die {
    my ($code, $name) = @_;
    my $ok = eval { $code->(); 1 };
    my $err = $@;
    ok(!$ok, "$name dies");
    like($err, qr/^[^\n]+\n\z/, "$name: one-line message") or diag("got: " . explain($err));
    return $err;
}

# A backup no other backup names as parent.
my %has_dependent;
for my $b (@backups) {
    push @{ $has_dependent{ $b->{parent} } }, $b if defined($b->{parent});
}
my @leaves = grep { !$has_dependent{ $_->{volname} } } @backups;

# ---- storage -------------------------------------------------------------------------------

subtest 'storage is up' => sub {
    ok($plugin->check_connection($storeid, $scfg), 'check_connection');
    ok(eval { $plugin->activate_storage($storeid, $scfg, {}); 1 }, 'activate_storage') or diag($@);
    my ($total, $avail, $used, $active) = $plugin->status($storeid, $scfg, {});
    is($active, 1, 'status: active');
    ok($total > 0, 'status: total > 0');
};

# ---- listing -------------------------------------------------------------------------------

my %format_of;

subtest 'list_volumes: every backup, as the fixture says' => sub {
    my $all = listing();
    is_deeply([sort keys %$all], [sort map { volid($_->{volname}) } @backups], 'exactly the fixture backups');
    for my $b (@backups) {
        my $e = $all->{ volid($b->{volname}) } or next;
        my $v = $b->{volname};
        is($e->{content}, 'backup', "$v: content");
        is($e->{vmid}, $b->{vmid}, "$v: vmid");
        is($e->{subtype}, $b->{subtype}, "$v: subtype");
        is($e->{ctime}, $b->{ctime}, "$v: ctime");
        is($e->{size}, $b->{size}, "$v: size");
        like($e->{format} // '', qr/^[a-z0-9\-]+$/, "$v: format set");
        $format_of{$v} = $e->{format};
        is($e->{notes}, $b->{notes}, "$v: notes");
        is($e->{protected}, $b->{protected} ? 1 : undef, "$v: protected");
        is(strip_storeid($e->{parent}), $b->{parent}, "$v: parent");
    }
};

subtest 'list_volumes filters' => sub {
    my %vmids = map { $_->{vmid} => 1 } @backups;
    for my $vmid (sort keys %vmids) {
        my $list = listing($vmid);
        is_deeply([sort keys %$list], [sort map { volid($_->{volname}) } grep { $_->{vmid} == $vmid } @backups],
            "vmid $vmid: only its backups");
    }
    is_deeply(listing(999999999), {}, 'unknown vmid: nothing');
    is_deeply($plugin->list_volumes($storeid, $scfg, undef, ['images']), [], "content-types ['images']: []");
    is(scalar(keys %{ listing(undef, ['backup']) }), scalar(@backups), "content-types ['backup']: all");
    is(scalar(keys %{ listing(undef, ['images', 'backup']) }), scalar(@backups), "content-types ['images','backup']: all");
};

# ---- one backup at a time --------------------------------------------------------------------

for my $b (@backups) {
    my $v = $b->{volname};
    subtest "volume $v" => sub {
        my @p = $plugin->parse_volname($v);
        is($p[0], 'backup', 'parse_volname: vtype');
        is($p[1], archive_name($v), 'parse_volname: name is the archive name');
        is($p[2], $b->{vmid}, 'parse_volname: owner vmid');
        is($p[6], $format_of{$v}, 'parse_volname: format as listed');

        my ($path, $vmid, $vtype) = $plugin->path($scfg, $v, $storeid);
        is($path, "$scfg->{path}/" . archive_name($v), 'path: the backup directory under the storage path');
        ok(-d $path, 'path exists as a directory');
        is($vmid, $b->{vmid}, 'path: vmid');
        is($vtype, 'backup', 'path: vtype');
        is(scalar($plugin->path($scfg, $v, $storeid)), $path, 'path in scalar context');

        my @size = $plugin->volume_size_info($scfg, $storeid, $v);
        is($size[0], $b->{size}, 'volume_size_info: size');
        is($size[1], $format_of{$v}, 'volume_size_info: format');
        like($size[2] // '', qr/^\d+$/, 'volume_size_info: used is an integer');
        is(strip_storeid($size[3]), $b->{parent}, 'volume_size_info: parent');
        is($size[4], $b->{ctime}, 'volume_size_info: ctime');
        is(scalar($plugin->volume_size_info($scfg, $storeid, $v)), $b->{size}, 'volume_size_info in scalar context');

        is($plugin->get_volume_attribute($scfg, $storeid, $v, 'notes'), $b->{notes}, 'notes attribute');
        is($plugin->get_volume_attribute($scfg, $storeid, $v, 'protected'), $b->{protected} ? 1 : 0,
            'protected attribute');

        my $config = $provider->archive_get_guest_config($v);
        ok($config eq decode_base64($b->{'guest-config-base64'}), 'archive_get_guest_config: the exact bytes')
            or diag(sprintf('got %d bytes, want %d', length($config // ''), length(decode_base64($b->{'guest-config-base64'}))));
        ok(!utf8::is_utf8($config), 'as a byte string');
    };
}

# ---- notes and protected -------------------------------------------------------------------

subtest 'notes: set, read back as characters, clear' => sub {
    my $b = $backups[0];
    my $v = $b->{volname};
    $plugin->update_volume_attribute($scfg, $storeid, $v, 'notes', $NOTES);
    my $got = $plugin->get_volume_attribute($scfg, $storeid, $v, 'notes');
    is($got, $NOTES, 'non-ASCII notes round-trip');
    is(length($got // ''), length($NOTES), 'as characters, not bytes');
    is(listing()->{ volid($v) }->{notes}, $NOTES, 'listed with the new notes');

    $plugin->update_volume_attribute($scfg, $storeid, $v, 'notes', '');
    my $cleared = $plugin->get_volume_attribute($scfg, $storeid, $v, 'notes');
    ok(!defined($cleared) || $cleared eq '', 'empty string clears the notes');
    my $listed = listing()->{ volid($v) }->{notes};
    ok(!defined($listed) || $listed eq '', 'listed without notes');
};

subtest 'protected: set and clear' => sub {
    my ($b) = grep { !$_->{protected} } @backups or return fail('fixture has an unprotected backup');
    my $v = $b->{volname};
    $plugin->update_volume_attribute($scfg, $storeid, $v, 'protected', 1);
    is($plugin->get_volume_attribute($scfg, $storeid, $v, 'protected'), 1, 'protected');
    is(listing()->{ volid($v) }->{protected}, 1, 'listed as protected');
    $plugin->update_volume_attribute($scfg, $storeid, $v, 'protected', 0);
    is($plugin->get_volume_attribute($scfg, $storeid, $v, 'protected'), 0, 'unprotected');
    ok(!listing()->{ volid($v) }->{protected}, 'listed without protected');
};

subtest 'unsupported attribute' => sub {
    one_line_die(sub { $plugin->update_volume_attribute($scfg, $storeid, $backups[0]->{volname}, 'foo', 'bar') },
        "update_volume_attribute 'foo'");
};

# ---- delete --------------------------------------------------------------------------------

subtest 'free_image of a protected backup' => sub {
    my ($b) = (grep({ $_->{protected} } @leaves), grep({ !$_->{protected} } @leaves));
    return fail('fixture has a backup without dependents') if !$b;
    my $v = $b->{volname};
    my $was_protected = $b->{protected};
    $plugin->update_volume_attribute($scfg, $storeid, $v, 'protected', 1) if !$was_protected;
    my $path = $plugin->path($scfg, $v, $storeid);

    my $err = one_line_die(sub { $plugin->free_image($storeid, $scfg, $v, 0) }, 'free_image of a protected backup');
    like($err, qr/protected/i, 'the message says protected');
    ok(listing()->{ volid($v) }, 'still listed');
    ok(-d $path, 'still on disk');

    $plugin->update_volume_attribute($scfg, $storeid, $v, 'protected', 0) if !$was_protected;
};

# The fixture's images are not qcow2, so the daemon cannot merge the parent into its dependent and refuses.
subtest 'free_image of a backup another one depends on, when merging is impossible' => sub {
    my ($parent) = grep { $has_dependent{ $_->{volname} } } @backups;
    return fail('fixture has a backup that another names as parent') if !$parent;
    my $v = $parent->{volname};
    my @dependents = @{ $has_dependent{$v} };
    $plugin->update_volume_attribute($scfg, $storeid, $v, 'protected', 0) if $parent->{protected};

    my $before = listing();
    my $path = $plugin->path($scfg, $v, $storeid);
    my $err = one_line_die(sub { $plugin->free_image($storeid, $scfg, $v, 0) }, 'free_image of a parent');
    # by volume name, volid or archive name: all contain '<type>-<epoch>'
    my $named = grep { my ($last) = $_->{volname} =~ m!([^/]+)$!; index($err, $last) >= 0 } @dependents;
    ok($named, 'the message names the dependent') or diag("dependents: @{[ map { $_->{volname} } @dependents ]}");
    like($err, qr/is not a qcow2 image/, 'the message says why the merge is impossible');
    is_deeply(listing(), $before, 'listing unchanged');
    ok(-d $path, 'still on disk');

    $plugin->update_volume_attribute($scfg, $storeid, $v, 'protected', 1) if $parent->{protected};
};

subtest 'free_image of a leaf' => sub {
    my @candidates = grep { !$_->{protected} } @leaves;
    # prefer a leaf that is nobody's dependent test subject
    my ($b) = (grep({ !defined($_->{parent}) } @candidates), @candidates);
    return fail('fixture has an unprotected backup without dependents') if !$b;
    my $v = $b->{volname};
    my $path = $plugin->path($scfg, $v, $storeid);
    ok(-d $path, 'on disk before');

    my @res = $plugin->free_image($storeid, $scfg, $v, 0);
    is_deeply(\@res, [undef], 'returns undef (no cleanup worker)');
    ok(!listing()->{ volid($v) }, 'no longer listed');
    ok(!-e $path, 'directory gone');
    ok(!-e "$scfg->{path}/" . archive_name($v), 'gone under the storage path');
    is(scalar(keys %{ listing() }), scalar(@backups) - 1, 'the others are still there');
};

# ---- names that do not parse ---------------------------------------------------------------

subtest 'an invalid volume name is an error, never a path' => sub {
    my $bad = 'backup/../etc';
    one_line_die(sub { $plugin->parse_volname($bad) }, 'parse_volname');
    one_line_die(sub { $plugin->path($scfg, $bad, $storeid) }, 'path');
    one_line_die(sub { $plugin->volume_size_info($scfg, $storeid, $bad) }, 'volume_size_info');
    one_line_die(sub { $plugin->get_volume_attribute($scfg, $storeid, $bad, 'notes') }, 'get_volume_attribute');
    one_line_die(sub { $plugin->free_image($storeid, $scfg, $bad, 0) }, 'free_image');
    one_line_die(sub { $provider->archive_get_guest_config($bad) }, 'archive_get_guest_config');
    ok(-d '/etc', '/etc untouched');
};

done_testing();
